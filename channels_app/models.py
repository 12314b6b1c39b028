from channels_app.telegram.models import TelegramChat, TelegramChatMember, TelegramUpdate

__all__ = ["TelegramChat", "TelegramChatMember", "TelegramUpdate"]
