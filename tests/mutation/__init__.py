"""make mutate: mutmut over the deciding modules, and the summary it prints."""
