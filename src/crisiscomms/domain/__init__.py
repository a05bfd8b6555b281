"""The pure core: models, the configuration schema, policy, calendar, matching, post text,
errors and clock. Nothing here does I/O."""
