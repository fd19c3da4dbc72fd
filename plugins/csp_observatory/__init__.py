"""csp-observatory: collect, validate, geocode, sanitise and load Community Safety Partnership feeds."""
