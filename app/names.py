"""The rules for names users give: models and datasets (they become folders and keys) and
classes (folders in exports and training). One regular expression each, used by the
checks and written into the OpenAPI document, so the two never disagree."""

import re

# Models and datasets: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit.
NAME_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# Classes: 1-100 characters; no '/', '\' or control character; not starting with '.';
# no space (or other white space) at either end.
LABEL_REGEX = r"^[^./\\\x00-\x1f\x7f\s](?:[^/\\\x00-\x1f\x7f]{0,98}[^/\\\x00-\x1f\x7f\s])?$"
# The same rules in words, for error answers and the OpenAPI document.
NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
LABEL_RULE = (
    "a class name: 1-100 characters, no '/', '\\' or control characters, not starting"
    " with '.', no space at either end"
)
NAME_PATTERN = re.compile(NAME_REGEX)
LABEL_PATTERN = re.compile(LABEL_REGEX)
