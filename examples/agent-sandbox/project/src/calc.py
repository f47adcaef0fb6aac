"""A deliberately small project for the agent to work on."""


def add(a: int, b: int) -> int:
    return a + b


def mean(values: list[float]) -> float:
    # Bug left for the agent: an empty list divides by zero.
    return sum(values) / len(values)
