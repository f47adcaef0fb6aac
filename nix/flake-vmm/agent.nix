# pcr-agent, the guest agent (../../agent, Go standard library only): static, no runtime dependencies.
{ buildGoModule, lib }:

buildGoModule {
  pname = "pcr-agent";
  version = "0.1.0";
  src = lib.cleanSource ../../agent;
  vendorHash = null; # no modules but the standard library
  CGO_ENABLED = 0;
  ldflags = [ "-s" "-w" ];
  postInstall = ''
    mv $out/bin/agent $out/bin/pcr-agent
  '';
  meta = {
    description = "Procurator's guest agent: exec, files, processes and in-guest faults over virtio-serial";
    mainProgram = "pcr-agent";
    platforms = lib.platforms.linux;
  };
}
