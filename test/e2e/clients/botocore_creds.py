# Runs inside a pod's network namespace: botocore's default credential chain, which ends at the instance
# metadata service on 169.254.169.254, or at the container-credentials endpoint when the environment names one
# (AWS_CONTAINER_CREDENTIALS_FULL_URI; method "container-role"). Prints {"accessKeyId", "method"} or {"error"};
# never a secret.
import json
import sys

import botocore.session

try:
    creds = botocore.session.get_session().get_credentials()
except Exception as err:  # noqa: BLE001 - report any failure as data
    print(json.dumps({"error": str(err)}))
    sys.exit(3)
if creds is None:
    print(json.dumps({"error": "no credentials"}))
    sys.exit(3)
frozen = creds.get_frozen_credentials()
print(json.dumps({"accessKeyId": frozen.access_key, "method": creds.method}))
