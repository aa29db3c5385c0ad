"""The pipeline's asynchronous AWS adapters: every aioboto3 call of the stages, its page loops and the
translation of botocore errors into fanout.errors. Callers never see a botocore error code."""
