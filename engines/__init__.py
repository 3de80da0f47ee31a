"""Science engines of hillwalker: plain functions with typed results, no Parsl here."""
