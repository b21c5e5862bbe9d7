"""``UserError``: a problem the user can fix (a bad parameter, an unreadable file, a bad image under
``on_bad_image: error``, a diverged run). ``coda`` ends on one with its one-line message and its
``exit_status``, no traceback (``--debug`` shows it); any other exception is a bug and keeps its
traceback. Each module defines its own errors as subclasses, beside the code that raises them."""


class UserError(Exception):
    exit_status = 2
