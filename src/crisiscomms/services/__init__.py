"""Use cases: each opens its unit of work, decides what happens and what is audited."""
