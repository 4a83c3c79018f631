"""The Python person fixture's error classes live in person_service.exceptions
so that their exc_path is the one the Rust person-service sends."""
