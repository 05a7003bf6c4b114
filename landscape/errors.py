"""The one exception type the command line turns into a one-line message.

Library code raises :class:`LandscapeError` for anything a user can fix (a wrong
path, a mismatched state_dict, an invalid option); the message names the problem
and the fix. The CLI prints ``error: <message>`` and exits with status 2, never a
traceback. Programming errors stay ordinary exceptions.
"""


class LandscapeError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""
