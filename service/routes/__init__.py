"""HTTP routes: thin functions that parse, call a service function and shape the answer."""
