"""Integration tests: Flask, Pyramid, PasteDeploy and the examples, through real hosts."""
