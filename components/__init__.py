"""Pipeline components: each module is one component with one public entry, run()."""
import pipeline  # noqa: F401  (applies the pipeline's logging and warning settings first)
