from django.urls import path

from channels_app.telegram import views as telegram

app_name = "channels_app"

urlpatterns = [
    path("telegram/webhook/", telegram.telegram_webhook, name="telegram_webhook"),
]
