"""syncward."""
