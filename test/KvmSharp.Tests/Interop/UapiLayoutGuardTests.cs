using System.Reflection;
using System.Runtime.InteropServices;
using KvmSharp.Interop;

namespace KvmSharp.Tests.Interop;

/// <summary>Makes sure nothing in the interop layer escapes the generated layout assertions.</summary>
[TestFixture]
public class UapiLayoutGuardTests
{
    private static readonly string[] EmittedNamespaces =
        [UapiLayoutGenerator.CommonNamespace, .. UapiLayoutGenerator.Arches.Select(a => UapiLayoutGenerator.ArchScope(a).Namespace)];

    private static IEnumerable<Type> NativeStructs() =>
        UapiLayoutGenerator.Library.GetTypes().Where(t =>
            t.IsValueType && !t.IsEnum
            && t.Namespace?.StartsWith(UapiLayoutGenerator.CommonNamespace, StringComparison.Ordinal) == true
            && t.StructLayoutAttribute?.Value == LayoutKind.Explicit);

    private static IEnumerable<Type> UapiStructs() =>
        UapiLayoutGenerator.Library.GetTypes().Where(t => t.GetCustomAttribute<UapiAttribute>() is not null);

    private static IEnumerable<FieldInfo> AllIoctlFields() =>
        new[] { typeof(KvmIoctls) }.Concat(typeof(KvmIoctls).GetNestedTypes(BindingFlags.Public | BindingFlags.NonPublic))
            .SelectMany(UapiLayoutGenerator.IoctlFieldsOf);

    [Test]
    public void Every_native_struct_carries_Uapi()
    {
        var missing = NativeStructs().Where(t => t.GetCustomAttribute<UapiAttribute>() is null).Select(t => t.FullName);

        Assert.That(missing, Is.Empty, "explicit-layout interop structs without [Uapi] are never checked against the headers");
    }

    [Test]
    public void Every_Uapi_struct_is_in_a_namespace_the_generator_emits()
    {
        var stray = UapiStructs().Where(t => !EmittedNamespaces.Contains(t.Namespace)).Select(t => t.FullName);

        Assert.That(stray, Is.Empty);
    }

    [Test]
    public void Every_Uapi_struct_has_its_declared_size()
    {
        var wrong = UapiStructs()
            .Where(t => t.StructLayoutAttribute?.Size != UapiLayoutGenerator.SizeOf(t))
            .Select(t => $"{t.FullName}: declared {t.StructLayoutAttribute?.Size}, actual {UapiLayoutGenerator.SizeOf(t)}");

        Assert.That(wrong, Is.Empty);
    }

    [Test]
    public void Every_ioctl_is_named_after_its_field()
    {
        var fields = AllIoctlFields().ToList();
        var misnamed = fields.Select(f => (Field: f, Ioctl: (KvmIoctl)f.GetValue(null)!))
            .Where(x => x.Ioctl.Name != x.Field.Name)
            .Select(x => $"{UapiLayoutGenerator.Describe(x.Field)} is named {x.Ioctl.Name}");

        Assert.That(fields, Is.Not.Empty);
        Assert.That(misnamed, Is.Empty);
    }

    [Test]
    public void Every_ioctl_is_emitted_on_its_architectures()
    {
        var emitted = UapiLayoutGenerator.Arches.ToDictionary(a => a, a => UapiLayoutGenerator.Checks(a).Select(c => c.Source).ToHashSet());
        var missing = new List<string>();
        foreach (var field in AllIoctlFields())
        {
            var arches = field.DeclaringType == typeof(KvmIoctls)
                ? UapiLayoutGenerator.Arches
                : UapiLayoutGenerator.Arches.Where(a => UapiLayoutGenerator.ArchScope(a).Ioctls == field.DeclaringType).ToArray();
            if (arches.Length == 0)
                missing.Add($"{UapiLayoutGenerator.Describe(field)}: its class is no architecture's");
            missing.AddRange(arches.Where(a => !emitted[a].Contains(field)).Select(a => $"{UapiLayoutGenerator.Describe(field)} on {a}"));
        }

        Assert.That(missing, Is.Empty);
    }

    [TestCase("x86_64")]
    [TestCase("arm64")]
    [TestCase("s390x")]
    public void Every_struct_and_field_gets_an_assertion(string arch)
    {
        var checks = UapiLayoutGenerator.Checks(arch);
        var perSource = checks.GroupBy(c => c.Source).ToDictionary(g => g.Key, g => g.Count());
        var structs = UapiLayoutGenerator.StructTypes(arch);
        var fields = structs.SelectMany(UapiLayoutGenerator.InstanceFields).ToList();

        var uncovered = structs.Cast<MemberInfo>().Concat(fields)
            .Where(m => perSource.GetValueOrDefault(m) == 0)
            .Select(UapiLayoutGenerator.Describe);

        using (Assert.EnterMultipleScope())
        {
            Assert.That(structs, Has.Count.GreaterThan(20));
            Assert.That(uncovered, Is.Empty);
            // An offset and a size per field, a size per struct (and a union start per kvm_run member).
            Assert.That(checks, Has.Count.GreaterThanOrEqualTo(2 * fields.Count + structs.Count));
            Assert.That(UapiLayoutGenerator.Generate(arch).Split('\n').Count(l => l.StartsWith("_Static_assert(", StringComparison.Ordinal)),
                Is.EqualTo(checks.Count));
        }
    }
}
