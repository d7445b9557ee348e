"""Pipeline components: each module is one component with one public entry, run()."""
