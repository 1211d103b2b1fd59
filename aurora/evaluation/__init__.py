"""`aurora eval`: benchmark runs, metrics and the rule that picks an option out of an answer."""
