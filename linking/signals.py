"""Signals of the linking app, for channels to act on without linking importing them."""

from django.dispatch import Signal

# Sent after the transaction that linked an identity commits: grant=LinkGrant,
# challenge=LinkChallenge (its `notify` says where the channel should confirm).
identity_linked = Signal()
