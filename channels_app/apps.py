from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels"

    def ready(self) -> None:
        from afhost.registry import register_channel
        from channels_app.responses.channel import ResponsesChannel
        from channels_app.telegram.channel import TelegramChannel

        register_channel(ResponsesChannel())
        register_channel(TelegramChannel())
