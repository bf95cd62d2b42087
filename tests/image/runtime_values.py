"""Environment values the runtime's unit tests share."""

GOOD_ENV = {
    "DYNO": "web.1",
    "PORT": "5000",
    "DATABASE_URL": "postgres://u:p%40ss@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1",
    "S3_URI": "s3://team-mlflow/artifacts",
    "MLFLOW_TRACKING_USERNAME": "alice",
    "MLFLOW_TRACKING_PASSWORD": "correct horse battery",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-123",
    "AWS_DEFAULT_REGION": "eu-west-1",
}
SECRETS = ("p@ss", "p%40ss", "correct horse battery", "aws-secret-value-123")


TRICKY_PASSWORDS = [
    "plain-password",
    "per%cent,comma:colon",
    "quotes ' and \" and `back`",
    "$dollar$ !bang! \\backslash",
    "spaces  inside  ",
    "ünïcödé ✓ 密码",
    "#hash {brace} [x] ;semi",
    "x" * 72,
    "a~>?b>?~",  # "alice:" + this encodes with a "+" (a regex operator in nginx's auth match)
    "~>?~>?",  # ... and this with a "/"
]
