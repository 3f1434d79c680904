"""Chat: prompt templates (templates.py) and how messages become ids (encode.py)."""

from tinylm.chat.encode import (
                                choose_template,
                                conversation_ids,
                                encode_messages,
                                encode_pieces,
                                run_template,
                                warn_unknown_markers,
)
from tinylm.chat.templates import TEMPLATES, Template, check_messages, get_template, instruction_messages

__all__ = ["TEMPLATES", "Template", "check_messages", "choose_template", "conversation_ids", "encode_messages",
           "encode_pieces", "get_template", "instruction_messages", "run_template", "warn_unknown_markers"]
