from __future__ import annotations

from django import template
from django.core.checks import CheckMessage

from linking import checks

register = template.Library()


@register.simple_tag
def linking_problems() -> list[CheckMessage]:
    """Linking's configuration problems (linking.checks), for the admin index."""
    return checks.problems()
