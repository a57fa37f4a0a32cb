"""Errors a job can end with. Their text is what the caller sees in `{"error": ...}`."""


class JobInputError(ValueError):
    """The request is wrong; the message starts with the offending field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
