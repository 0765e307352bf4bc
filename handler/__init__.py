"""The AWS adapter: the Lambda entry point, events, S3/SQS I/O, S3 listing, the s3://
model fetcher."""
