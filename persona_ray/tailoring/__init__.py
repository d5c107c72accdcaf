from persona_ray.tailoring.merge import *  # noqa: F401,F403 (temporary)
from persona_ray.tailoring.merge import __all__  # noqa: F401
