from django.core.management.base import BaseCommand
from django_q.models import Schedule

# Every periodic task, declared once. Run on every deploy; running it again changes nothing.
SCHEDULES = [
    {
        "name": "afhost.sweep_runs",
        "func": "afhost.tasks.sweep_runs",
        # every minute: recover background runs whose queue task went missing
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
    {
        "name": "channels_app.sweep_telegram_updates",
        "func": "channels_app.tasks.sweep_telegram_updates",
        # every minute: retry Telegram updates whose earlier attempt failed or whose worker died
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
]


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules afhost needs (idempotent)."

    def handle(self, *args, **options):
        for spec in SCHEDULES:
            fields = {key: value for key, value in spec.items() if key != "name"}
            _, created = Schedule.objects.update_or_create(name=spec["name"], defaults=fields)
            self.stdout.write(f"{'Created' if created else 'Updated'} schedule {spec['name']}")
