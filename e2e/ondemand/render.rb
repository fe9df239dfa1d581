# Renders the Open OnDemand app in deploy/ondemand the way OnDemand's dashboard does, with real
# Ruby ERB, so tests can read, check and submit the result. This file stands in for OnDemand's
# dashboard and its "basic" batch_connect wrapper; it is test tooling, not part of the app.
#
#   ruby render.rb APP_DIR OUT_DIR key=value ...
#
# Writes OUT_DIR/form.yml, OUT_DIR/submit.yml, OUT_DIR/before.sh, OUT_DIR/script.sh and
# OUT_DIR/job.sh, the batch script OnDemand would submit: its helpers, host, before.sh in the
# session directory, the connection file, then script.sh. With host=, port= and job_id= among
# the values it also writes OUT_DIR/view.html, the session card.
require "erb"
require "fileutils"
require "ostruct"
require "shellwords"
require "yaml"

# The form's values as OnDemand passes them: methods in submit.yml.erb, context.NAME in the
# template's files.
class FormBinding
  def initialize(values)
    @values = values
    values.each { |name, value| define_singleton_method(name) { value } }
  end

  def context
    OpenStruct.new(@values)
  end

  def session
    OpenStruct.new(id: "render-test")
  end

  def get_binding
    binding
  end
end

def render(path, values)
  ERB.new(File.read(path), trim_mode: "-").result(FormBinding.new(values).get_binding)
end

# OnDemand's own bash helpers, reduced to the one the app uses; OnDemand's find_port also picks
# a free port in a range (min_port 2000, max_port 65535).
HELPERS = <<~'SH'
  port_used() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
  find_port() {
    local host=${1:-localhost} port
    for _ in $(seq 1 200); do
      port=$(shuf -i 20000-60000 -n 1)
      port_used "$host" "$port" || { echo "$port"; return 0; }
    done
    echo "find_port: no free port on $host" >&2
    return 1
  }
SH

app, out, *pairs = ARGV
abort "usage: ruby render.rb APP_DIR OUT_DIR key=value ..." if app.nil? || out.nil?
values = pairs.to_h { |pair| pair.split("=", 2) }.transform_keys(&:to_sym)
FileUtils.mkdir_p(out)

form = render(File.join(app, "form.yml.erb"), values)
YAML.safe_load(form)
File.write(File.join(out, "form.yml"), form)
submit = render(File.join(app, "submit.yml.erb"), values)
YAML.safe_load(submit)
File.write(File.join(out, "submit.yml"), submit)
before = render(File.join(app, "template", "before.sh.erb"), values)
File.write(File.join(out, "before.sh"), before)
script = render(File.join(app, "template", "script.sh.erb"), values)
File.write(File.join(out, "script.sh"), script, perm: 0o755)
File.chmod(0o755, File.join(out, "script.sh"))

conn = YAML.safe_load(submit).dig("batch_connect", "conn_params") || []
job = <<~SH
  #!/bin/bash
  #{HELPERS}
  host=$(hostname)
  cd #{File.expand_path(out).shellescape}
  source ./before.sh
  {
    echo "host: $host"
    echo "port: $port"
  #{conn.map { |name| "  echo \"#{name}: ${#{name}}\"" }.join("\n")}
  } > connection.yml
  ./script.sh
SH
File.write(File.join(out, "job.sh"), job, perm: 0o755)
File.chmod(0o755, File.join(out, "job.sh"))

if values.key?(:host) && values.key?(:port) && values.key?(:job_id)
  File.write(File.join(out, "view.html"), render(File.join(app, "view.html.erb"), values))
end
