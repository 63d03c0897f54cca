using System.Reflection;
using Onnx.Lora.Ir;
using Onnx.Lora.Trainer.Autodiff;

namespace Onnx.Lora.Tests.Trainer;

/// <summary>
/// The op table is complete (every entry has a shape rule or the explicit unknown marker, a VJP exactly when it is
/// differentiable, no duplicate key) and the finite-difference suite covers it: every differentiable entry has at
/// least one test marked <see cref="ChecksGradientOfAttribute"/>.
/// </summary>
[TestClass]
public sealed class OpTableTests
{
    public static IEnumerable<object[]> DifferentiableOps =>
        OpTable.Default.Entries.Where(e => e.Gradient == Differentiability.Differentiable)
            .OrderBy(e => e.Domain, StringComparer.Ordinal).ThenBy(e => e.OpType, StringComparer.Ordinal)
            .Select(e => new object[] { e.Domain, e.OpType });

    [TestMethod]
    public void Default_EveryEntry_IsComplete()
    {
        Assert.IsNotEmpty(OpTable.Default.Entries);
        foreach (OpEntry e in OpTable.Default.Entries)
        {
            Assert.IsFalse(string.IsNullOrEmpty(e.OpType), $"an entry of domain '{e.Domain}' has no op type");
            Assert.AreNotEqual("ai.onnx", e.Domain, $"{e}: domain not normalized");
            Assert.IsNotNull(e.Shape, $"{e}: no shape rule (use Shapes.Unknown to say so)");
            Assert.IsNotNull(e.Type, $"{e}: no type rule");
            Assert.AreEqual(e.Gradient == Differentiability.Differentiable, e.Vjp is not null, $"{e}: {e.Gradient} but VJP {(e.Vjp is null ? "missing" : "present")}");
            Assert.IsTrue(e.NonDifferentiableInputs.All(i => i >= 0), $"{e}: negative input index");
            Assert.IsFalse(e.Gradient == Differentiability.None && e.NonDifferentiableInputs.Count > 0, $"{e}: a cut op lists non-differentiable inputs");
        }
    }

    [TestMethod]
    public void Constructor_SameOpTwice_ThrowsNamingIt()
    {
        OpEntry erf = OpTable.Default.Find(string.Empty, "Erf")!;
        var e = Assert.ThrowsExactly<ArgumentException>(() => new OpTable([erf, erf with { Domain = "ai.onnx" }]));
        StringAssert.Contains(e.Message, "ai.onnx::Erf");
    }

    [TestMethod]
    public void Find_AiOnnxDomain_FindsTheDefaultDomainEntry()
    {
        Assert.AreSame(OpTable.Default.Find(string.Empty, "MatMul"), OpTable.Default.Find("ai.onnx", "MatMul"));
        Assert.IsNull(OpTable.Default.Find("com.microsoft", "MatMul"), "domains are told apart");
    }

    [TestMethod]
    [DynamicData(nameof(DifferentiableOps))]
    public void DifferentiableEntry_HasFiniteDifferenceCase(string domain, string opType)
    {
        Assert.Contains((domain, opType), CheckedOps().Keys,
            $"{(domain.Length > 0 ? domain : "ai.onnx")}::{opType} has a VJP in the op table but no finite-difference test marked [ChecksGradientOf].");
    }

    [TestMethod]
    public void ChecksGradientOf_NamesOnlyDifferentiableTableOps()
    {
        foreach (((string domain, string op), string test) in CheckedOps())
        {
            Assert.AreEqual(Differentiability.Differentiable, OpTable.Default.Find(domain, op)?.Gradient, $"{test} claims to check '{domain}::{op}', which has no VJP in the op table");
        }
    }

    [TestMethod]
    public void BackwardGraph_DecomposedGelu_DifferentiatesTheErfNode()
    {
        // y = x·½·(1 + erf(x/√2)): every node on the path gets a backward node, Erf included.
        var b = new GraphBuilder("g", 17);
        Value x = b.Floats("x", [2], [0.5f, -1f]);
        Value erf = b.Op("Erf", [b.Div(x, b.Floats("sqrt2", [], [MathF.Sqrt(2)]))], name: "the_erf");
        Value y = b.Mul(b.Mul(x, b.Floats("half", [], [0.5f])), b.Add(erf, b.Floats("one", [], [1f])));
        Value loss = b.Op("ReduceSum", [y], [Attr.Int("keepdims", 0)]);
        BackwardResult result = BackwardGraph.Build(b.Model, loss, ["x"]);
        Assert.AreEqual(6, result.DifferentiatedNodes, "ReduceSum, two Muls, Add, Erf, Div");
    }

    /// <summary>(domain, op type) → one test that checks its gradient, from the attributes of this assembly's test methods.</summary>
    private static Dictionary<(string Domain, string OpType), string> CheckedOps()
    {
        var found = new Dictionary<(string, string), string>();
        foreach (MethodInfo m in typeof(OpTableTests).Assembly.GetTypes().SelectMany(t => t.GetMethods()))
        {
            if (m.GetCustomAttribute<TestMethodAttribute>() is null)
            {
                continue;
            }

            foreach (ChecksGradientOfAttribute a in m.GetCustomAttributes<ChecksGradientOfAttribute>())
            {
                foreach (string op in a.OpTypes)
                {
                    found.TryAdd((a.Domain, op), $"{m.DeclaringType!.Name}.{m.Name}");
                }
            }
        }

        return found;
    }
}
