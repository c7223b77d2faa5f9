// Starts `nexus lsp` (nexusdsl's language server) for .nx files.
const { workspace } = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = workspace.getConfiguration("nexus").get("server.command");
  client = new LanguageClient(
    "nexus",
    "Nexus language server",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "nx" }] }
  );
  context.subscriptions.push(client);
  client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
