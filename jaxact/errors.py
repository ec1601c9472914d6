"""The error every layer raises for a bad request: `UserError`."""


class UserError(Exception):
  """A problem with the user's request; str() names the problem and the fix."""
