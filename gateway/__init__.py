"""gateway: an asyncio SIP back-to-back user agent for contact centres, built for emergency calls."""

__version__ = "0.1.0"
