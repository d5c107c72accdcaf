"""`python -m persona_ray` = the `persona-ray` command."""

from persona_ray.cli import app

if __name__ == "__main__":
    app()
