"""Interview mode: the question bank, numeric questions, the timed coding question, sessions and review."""
