"""What one request may carry, checked while it is decoded, before it waits for anything.

A 10 MB prompt costs tens of seconds of tokenizing that delays everyone; a 60 MB path is
echoed into replies and logs. Prompts get a generous character cap
(``DIFFUSERS_MAX_PROMPT_CHARS``), free-form option text a larger one, and every other
string (paths, model names, identities) the length of the longest real path.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from diffusers_backend.errors import InvalidArgument
from diffusers_backend.media.inline import IMAGE_FIELDS, MAX_INLINE_CHARS, may_be_inline
from diffusers_backend.path_guard import MAX_PATH_CHARS

PROMPT_FIELDS = frozenset({"prompt", "positive_prompt", "negative_prompt"})
TEXT_FIELDS = frozenset({"Options", "EngineArgs"})  # "key:value" options, a JSON object
MAX_TEXT_CHARS = 64 * 1024


def check_request(request: Any, max_prompt_chars: int) -> None:
    """Raise InvalidArgument naming the first string field of ``request`` above its cap."""
    for field, value in request.ListFields():
        if field.type != FieldDescriptor.TYPE_STRING:
            continue
        if field.name in PROMPT_FIELDS:
            limit, setting = max_prompt_chars, " (DIFFUSERS_MAX_PROMPT_CHARS)"
        elif field.name in TEXT_FIELDS:
            limit, setting = MAX_TEXT_CHARS, ""
        else:
            limit, setting = MAX_PATH_CHARS, ""
        for text in (value if field.is_repeated else (value,)):
            cap = (MAX_INLINE_CHARS if field.name in IMAGE_FIELDS and may_be_inline(text)
                   else limit)  # an inline image (media.inline) is longer than any path
            if len(text) > cap:
                raise InvalidArgument(f"{field.name} is {len(text)} characters long, above the "
                                      f"limit of {cap}{setting}")
