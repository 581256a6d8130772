"""Loss terms (a registry) and the weighted objective built from them."""
