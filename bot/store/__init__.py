"""Data access: the only SQL outside ``bot/migrations``. One module per table group, typed rows in and out."""
