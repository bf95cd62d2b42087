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
    "MLFLOW_CRYPTO_KEK_PASSPHRASE": "kek-passphrase-of-at-least-32-characters",
}
SECRETS = (
    "p@ss",
    "p%40ss",
    "correct horse battery",
    "aws-secret-value-123",
    "kek-passphrase-of-at-least-32-characters",
)


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


# Accounts mode: no shared login; the admin and the people as code instead.
ACCOUNTS_ENV = {
    **{name: value for name, value in GOOD_ENV.items() if not name.startswith("MLFLOW_TRACKING")},
    "MLFLOW_HEROKU_LOGIN_MODE": "accounts",
    "MLFLOW_AUTH_ADMIN_USERNAME": "team-admin",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "admin password 1234",
    "MLFLOW_HEROKU_PEOPLE": (
        '[{"username": "ana", "role": "editor"}, {"username": "bo.reader", "role": "reader"},'
        ' {"username": "cy@example.com", "role": "admin"}]'
    ),
    "MLFLOW_HEROKU_PEOPLE_PASSWORDS": (
        '{"ana": "ana initial pw 1", "bo.reader": "bo initial pw 22", '
        '"cy@example.com": "cy initial pw 333"}'
    ),
}
ACCOUNTS_SECRETS = (
    "p@ss",
    "aws-secret-value-123",
    "kek-passphrase-of-at-least-32-characters",
    "admin password 1234",
    "ana initial pw 1",
    "bo initial pw 22",
    "cy initial pw 333",
)
