"""Test settings: `from .settings import *`, plus what makes tests fast and isolated."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key")
os.environ.setdefault("AFHOST_TARGET", "tests.agents:agent")
os.environ.setdefault("AFHOST_DEMO_TOKEN_DELAY", "0")
os.environ.setdefault("AFHOST_POLL_INTERVAL", "0.05")
os.environ.setdefault("AFHOST_RUN_TIMEOUT", "30")
os.environ.setdefault("AFHOST_QUEUE_POLL", "0.05")
os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
os.environ.setdefault("TELEGRAM_BOT_TOKEN", "123456:TEST-TOKEN")
os.environ.setdefault("TELEGRAM_WEBHOOK_SECRET", "test-webhook-secret")
# Tests point this at a fake Bot API on loopback; nothing may reach Telegram itself.
os.environ.setdefault("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9/bot")

from afhost.settings import *  # noqa: E402, F403
from afhost.settings import BASE_DIR, DATABASES, Q_CLUSTER  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: the live server and the worker run in their own processes.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test_db.sqlite3")}

# The live server and worker that tests start are pointed at the test database by name.
if os.environ.get("AFHOST_TEST_DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["AFHOST_TEST_DATABASE_NAME"]

Q_CLUSTER = {**Q_CLUSTER, "name": "afhost-test", "workers": 2}
