# Checks the Open OnDemand app's templates (deploy/ondemand) rendered with real Ruby ERB:
# valid YAML, a script that passes the form's model to the agent as one argument whatever it
# holds, bounded sbatch options, and a session card that escapes what it shows.
#
#   ruby e2e/ondemand/render_test.rb      (make check-deploy)
require "minitest/autorun"
require "fileutils"
require "open3"
require "tmpdir"
require "yaml"

class OnDemandAppTest < Minitest::Test
  HERE = __dir__
  APP = File.expand_path("../../deploy/ondemand", HERE)

  def render(out, **values)
    args = ["ruby", File.join(HERE, "render.rb"), APP, out] + values.map { |k, v| "#{k}=#{v}" }
    output, status = Open3.capture2e(*args)
    assert status.success?, "render failed: #{output}"
  end

  def test_script_passes_the_model_as_one_argument
    Dir.mktmpdir do |dir|
      model = %q(/models/a b'; touch "$HOME/pwned" #$(id))
      render(dir, model: model, bc_num_slots: 2, gpus_per_node: 4, bc_num_hours: 1)
      # An installation whose multinode.sbatch prints the arguments it was given.
      home = File.join(dir, "home")
      FileUtils.mkdir_p(File.join(home, "slurm-scripts"))
      File.write(File.join(home, "slurm-scripts", "multinode.sbatch"), %(printf '%s\\0' "$@"\n))
      out, err, status = Open3.capture3({ "LLM_AGENT_HOME" => home, "port" => "4242", "HOME" => dir },
                                        File.join(dir, "script.sh"))
      assert status.success?, err
      assert_equal ["--model", model, "--port", "4242"], out.split("\0")
      refute File.exist?(File.join(dir, "pwned"))
    end
  end

  def test_yaml_and_bounded_sbatch_options
    Dir.mktmpdir do |dir|
      render(dir, model: "m", bc_num_slots: "0; rm -rf /", gpus_per_node: "99", bc_num_hours: 1)
      form = YAML.safe_load(File.read(File.join(dir, "form.yml")))
      assert_equal %w[model bc_num_slots gpus_per_node bc_num_hours bc_account bc_queue], form["form"]
      submit = YAML.safe_load(File.read(File.join(dir, "submit.yml")))
      assert_equal "basic", submit.dig("batch_connect", "template")
      assert_equal ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8", "--signal=TERM@120"],
                   submit.dig("script", "native")
      _, err, status = Open3.capture3("bash", "-n", File.join(dir, "job.sh"))
      assert status.success?, err
    end
  end

  def test_session_card_escapes
    Dir.mktmpdir do |dir|
      render(dir, model: "m", bc_num_slots: 1, gpus_per_node: 1, bc_num_hours: 1,
                  host: %(node1"><script>alert(1)</script>), port: "8000x", job_id: "<b>42</b>")
      view = File.read(File.join(dir, "view.html"))
      refute_includes view, "<script>"
      refute_includes view, "<b>42"
      assert_includes view, "node1&quot;&gt;&lt;script&gt;"
      assert_includes view, ":8000</code>"
      assert_includes view, "llm-agent status &lt;b&gt;42&lt;/b&gt;"
      # The link to the page through the rnode proxy: the host encoded as one path element.
      assert_includes view, %(action="/rnode/node1%22%3E%3Cscript%3Ealert%281%29%3C%2Fscript%3E/8000/ui/")
    end
  end

  def test_session_card_links_the_page
    Dir.mktmpdir do |dir|
      render(dir, model: "m", bc_num_slots: 1, gpus_per_node: 1, bc_num_hours: 1,
                  host: "node1", port: "59390", job_id: "42")
      view = File.read(File.join(dir, "view.html"))
      assert_includes view, %(action="/rnode/node1/59390/ui/")
    end
  end
end
