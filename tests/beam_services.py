"""Beam's own local job service, or a pool of SDK workers, with every gRPC server it opens bound
to 127.0.0.1 (Beam binds some to every interface).

    python -m tests.beam_services job PORT     the job service PortableRunner submits to
    python -m tests.beam_services pool PORT    workers for --environment_type=EXTERNAL, each in a
                                               process of its own
"""
import sys

import grpc._server


def _loopback_only():
    """Whatever address Beam asks for, listen on 127.0.0.1 at its port."""
    add = grpc._server._Server.add_insecure_port

    def add_insecure_port(self, address):
        port = address.rpartition(":")[2]
        return add(self, f"127.0.0.1:{port}")
    grpc._server._Server.add_insecure_port = add_insecure_port


if __name__ == "__main__":
    _loopback_only()
    kind, port = sys.argv[1], sys.argv[2]
    if kind == "job":
        from apache_beam.runners.portability import local_job_service_main
        local_job_service_main.run(["--port", port])
    else:
        from apache_beam.runners.worker import worker_pool_main
        worker_pool_main.main(["--service_port", port])
