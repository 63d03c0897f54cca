using System.CommandLine;
using Onnx.Lora.Cli;

var root = new RootCommand("onnx-lora: fine-tune ONNX transformer models with LoRA — inject, train, merge, export. No Python.");
foreach (Command command in CommandRegistry.All())
{
    root.Subcommands.Add(command);
}

return await root.Parse(args).InvokeAsync().ConfigureAwait(false);
