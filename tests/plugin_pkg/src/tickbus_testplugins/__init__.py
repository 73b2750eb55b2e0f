"""Sample tickbus plugins, installed as a separate distribution by the tests."""
