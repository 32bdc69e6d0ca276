"""The trusted side of perf-aggregator: everything here runs inside the Nitro Enclave.

Side: enclave. It decrypts credentials in memory only, polls exchanges through the
egress tunnel, aggregates performance and signs it with an NSM-attested key.
"""
