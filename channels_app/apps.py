from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels"

    def ready(self) -> None:
        from afhost.registry import register_channel, register_sweeper
        from channels_app.responses.channel import ResponsesChannel
        from channels_app.telegram.channel import TelegramChannel
        from channels_app.telegram.services import sweep_updates

        register_channel(ResponsesChannel())
        register_channel(TelegramChannel())
        register_sweeper(sweep_updates)
