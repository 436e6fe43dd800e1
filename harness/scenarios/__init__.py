"""How requests are issued to a backend; scenarios know nothing of models."""
