"""Shared helpers below every room: report formatting, the machine's description, peak memory,
progress messages. Standard library only at import time.
"""
