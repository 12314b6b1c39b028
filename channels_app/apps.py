from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels"

    def ready(self) -> None:
        from afhost.registry import register_channel, register_sweeper
        from channels_app.invocations.channel import InvocationsChannel
        from channels_app.responses.channel import ResponsesChannel
        from channels_app.telegram.channel import TelegramChannel
        from channels_app.telegram.services import confirm_link, sweep_updates
        from linking.signals import identity_linked

        register_channel(ResponsesChannel())
        register_channel(InvocationsChannel())
        register_channel(TelegramChannel())
        register_sweeper(sweep_updates)
        identity_linked.connect(confirm_link, dispatch_uid="telegram-confirm-link")
