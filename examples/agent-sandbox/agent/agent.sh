# sandbox-agent WORKSPACE: runs the project's tests and, when an API key was passed as a secret,
# asks the model about the failures. The key is read from /run/secrets and never printed.
workspace=${1:-/workspace}
cd "$workspace" || exit 1

echo "sandbox-agent: running tests in $workspace"
if report=$(make test 2>&1); then
  echo "$report"
  echo "sandbox-agent: tests pass, nothing to do"
  exit 0
fi
echo "$report"

key_file=/run/secrets/anthropic-api-key
if [[ ! -r $key_file ]]; then
  echo "sandbox-agent: tests fail; no $key_file secret, so no model to ask"
  exit 1
fi

request=$(jq -n --arg report "$report" '{
  model: "claude-sonnet-4-5",
  max_tokens: 1024,
  messages: [{ role: "user", content: ("These tests fail. Propose a minimal fix.\n\n" + $report) }]
}')
# The key reaches curl through a config on a file descriptor, not argv (ps would show argv).
curl --silent --show-error --fail \
  --config <(printf 'header = "x-api-key: %s"\n' "$(cat "$key_file")") \
  --header "anthropic-version: 2023-06-01" \
  --header "content-type: application/json" \
  --data "$request" \
  https://api.anthropic.com/v1/messages | jq -r '.content[0].text'
