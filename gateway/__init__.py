"""gateway: an asyncio SIP B2BUA for contact centres, built for emergency calls."""

__version__ = "0.1.0"
