"""Test fakes: small working stand-ins for outside services (exchanges). Side: tests and demo.

Fakes are real servers speaking the real wire format, not mocks: the code under test
runs unmodified against them (STYLE.md: fakes over mocks).
"""
